"""The HTTP edge: a Flask app that verifies, parses, queues and answers. Nothing below it imports Flask."""
