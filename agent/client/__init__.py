"""The remote side: talking to an agent on another device over MQTT (`neo-agent submit` and friends)."""
