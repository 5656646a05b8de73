"""The alert evaluator: rules over arriving telemetry, events to MQTT, InfluxDB and webhooks."""
