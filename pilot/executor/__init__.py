"""The executor: quanta run depth-first on warm workers, intermediates handed over in memory.

``engine`` drives a bundle through ``dispatch``'s policy on a pool of workers
(``worker_pool``: processes forked from a preloaded forkserver; ``in_process``: the
pilot's own process, for a debugger); each worker holds a ``bundle_session`` whose
``chaining_butler`` keeps intermediates in memory.
"""
