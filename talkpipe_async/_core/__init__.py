"""The generator core: sources, segments, pipelines, metadata, the sync mirror."""
