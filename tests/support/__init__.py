"""Helpers the tests share: servers, processes, backends, browsers, a raw WebSocket client, demo collections."""
