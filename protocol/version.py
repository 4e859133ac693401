"""The version of the wire contract. Bumped on any change a host must know about."""

PROTOCOL_VERSION = "1.0"
REQUEST_SCHEMA_TAG = "studio.local-image-generation.request.v1"
RESPONSE_SCHEMA_TAG = "studio.local-image-generation.response.v1"
