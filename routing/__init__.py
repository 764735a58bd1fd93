"""Turnout routing core: route records, matching, sticky selection, stores and the route table.

Shared by the gateway and the admin; imports neither.
"""
