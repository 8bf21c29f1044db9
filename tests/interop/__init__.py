"""TalkPipe's own segments, scripts and metadata in our pipelines."""
