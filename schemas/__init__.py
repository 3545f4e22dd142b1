"""The wire contract between chargeline's parts: message types, the msgpack codec, topic names.

Pure: nothing in this package does I/O.
"""

from schemas.codec import CodecError, decode, encode
from schemas.topics import Topic, TopicKind, Topics

__all__ = ["CodecError", "Topic", "TopicKind", "Topics", "decode", "encode"]
