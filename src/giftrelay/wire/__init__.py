"""The wire: what clients and the relay say to each other (messages, errors, events,
offsets, identifiers). Pure; imports nothing else of giftrelay."""
