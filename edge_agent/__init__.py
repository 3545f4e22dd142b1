"""The edge agent: drivers for meters and breakers, minute batches, store-and-forward."""
