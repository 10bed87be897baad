"""Activator plugins: run one quantum of a PipelineTask."""
