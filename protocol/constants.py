"""Protocol constants: version, framing limits and the coordinator's address.

Everything both sides of the wire must agree on, and nothing else, lives here.
"""

from __future__ import annotations

PROTOCOL_VERSION = 1
"""Bumped on any incompatible change to the header or a body model."""

MAX_FRAME_BYTES = 1 << 20
"""Largest header or body frame accepted; a larger one is rejected as OVERSIZE."""

MAX_TEXT_BYTES = MAX_FRAME_BYTES - 64 * 1024
"""Longest message text (UTF-8): what fits in a MSG body frame with its envelope."""

SOCKET_MAX_MSG_BYTES = 16 * MAX_FRAME_BYTES
"""Hard cap handed to ZeroMQ (MAXMSGSIZE): a peer sending more is disconnected by libzmq.

It sits well above MAX_FRAME_BYTES so that frames between the two limits reach the
application, where they are counted and reported instead of vanishing silently.
"""

MAX_ID_BYTES = 64
"""Longest agent or room id (also the ZeroMQ routing id, which allows up to 255)."""

COORDINATOR_ID = "coordinator"
"""The `src` of every frame the coordinator sends; no agent may take this id."""
