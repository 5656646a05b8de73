"""Grafana dashboards as code: builders, the generated JSON and provisioning.

Small functions build each dashboard (`city`, `fleet`, `platform`) from the
shared contract (catalogue, storage names, Thai AQI bands, thresholds);
`build` writes the JSON and provisioning files that are committed and that
Grafana reads. Imports only `contract`, never another component.
"""
