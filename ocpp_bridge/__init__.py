"""The OCPP bridge (``chargeline ocpp``): each OCPP charging station as one more controller."""
