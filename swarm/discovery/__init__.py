"""Finding models and compute peers on the DHT, by concern:

- records: the signed name record a publisher makes for each model, its codec and checks (pure);
- slots: where records and announcements live (BEP 44 slots, BEP 5 keys; pure);
- bundle: the record bundle (manifest + torrent as a tiny torrent) and the record kept in the catalog;
- keeper: holders keeping a name findable (bundle seeding, holder announcement, record puts);
- resolve: the one model resolution (catalog first, then the DHT), with the pin policy;
- compute: compute peers' announcements and lookups.

libtorrent is used only through swarm/torrent (dht.py for lookups, presence.py for what a node keeps findable).
"""
