"""``pilot serve``: the reference scheduler handing bundles to pilots over the v1 protocol.

Modules: ``tables`` (database schema), ``store`` (the queue: claim, heartbeat, finish,
expiry), ``fit`` (matching bundles to slots), ``remainder`` (re-queued quanta as a new
bundle), ``outcome`` (what a lapsed lease left committed in staging), ``loader``
(bundle files into the store), ``ingester`` (background ingest into the DBB), ``app``
(the WSGI application) and ``server`` (cheroot and the background threads).
"""
