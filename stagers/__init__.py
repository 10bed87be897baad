"""Stager plugins: move files between the Data BackBone and the job's workspace."""
