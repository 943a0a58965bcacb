"""The server's request path, one module per concept (server.py is the entry point).

routes      the route table (make_app) and the small handlers: read this first
http        ClientError, the guard (access token, JSON errors), bodies read within limits
limits      Limits: what one client may ask, one flag each
uploads     POST /avatars bodies: photo or video, hashed as they arrive
preparation preparing uploaded avatars in child processes, their progress
avatars     the avatars a server knows: bundled, uploaded, video jobs
signalling  POST /offer: SDP checks, the peer connection, the microphone track
sessions    Server: live sessions, their watch, metrics, shutdown
control     the websocket of a session (ControlChannel): PCM and control messages in, stats out
"""
