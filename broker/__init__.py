"""The closed-network MQTT broker: amqtt with chargeline's plugins."""
