"""`kiban demo`: one simulated year in a small slice of Japan (SPEC §9).

Each capability adds a chapter: a function that takes the :class:`DemoContext`, does its part of
the story through the capabilities' public service functions, and returns a report section.
"""
