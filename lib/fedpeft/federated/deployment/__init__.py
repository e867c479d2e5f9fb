"""Flower's Deployment Engine: the study's Flower App (``apps``) run as real processes, one SuperLink and one
SuperNode per farmer (``engine``), each farmer behind its own rate-limited link (``links``), handed its work through
job files (``job``)."""
