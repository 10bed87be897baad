"""Moving bytes between the DBB and the job: stage-in through the input cache, stage-out as a committed unit.

``area`` owns the staging area's layout and its manifest (the commit record);
``retry`` is the transfer retry policy every transfer uses.
"""
