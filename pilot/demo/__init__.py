"""``pilot demo``: a local DBB, a real pipeline of mock PipelineTasks, run and ingested; and probe tasks."""
