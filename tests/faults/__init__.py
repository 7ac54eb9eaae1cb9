"""The fault suite: the library against a broker node that is restarted, killed,
closed on and fed hostile messages. See docs/reliability.md, "Fault runs"."""
