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
startup     one engine and its Server from the flags (server.py and every Ray replica)
ray_app     server.py --ray: the Ray Serve deployment (one engine per replica) and its driver
ray_bridge  ASGI -> the replica's own aiohttp app (the same handlers, no copies)
ray_proxy   in each Serve proxy: the session id from the path into the routing header
ray_router  a session's requests to its replica; new sessions where there is most room
ray_sessions  session ids that name their replica; 404 / 410 for the ids a replica lacks
ray_autoscale  --autoscale: replicas by sessions
"""
