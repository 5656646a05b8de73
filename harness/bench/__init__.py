"""`nakhon bench` and its sections: ingest, API, simulator, firmware, and the Node-RED peer."""
