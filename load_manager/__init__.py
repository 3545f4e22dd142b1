"""The sites' allocator service (``chargeline loads``): site load management's cloud level."""
