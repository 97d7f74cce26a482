"""Check and prepare: limits holds each model family's documented limits and token
formulas (from conf/models.yml); prepare probes one image against them, then orients,
converts, downscales and re-encodes it, or rejects it with a reason. Pure functions."""
