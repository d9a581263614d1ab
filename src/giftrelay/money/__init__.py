"""The money core: the Lua scripts in Redis and their typed async API. Imports only
:mod:`giftrelay.wire`."""
