"""What every chargeline process shares, below the services: common settings and their
sources, MQTT URLs and clients with reconnect delays (``mqtt.backoff``), time helpers,
connection budgets, log hygiene and the runner that stops a service cleanly.

It imports nothing of chargeline's but the wire contract (``schemas``).
"""
