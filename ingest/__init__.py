"""MQTT -> validation -> InfluxDB, acknowledging a message only once it is durable."""
