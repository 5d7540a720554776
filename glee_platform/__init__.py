"""The Ray layer of glee-platform: Ray Data pipelines, Ray Train loops, configs, tracking.

Named `glee_platform`, not `platform`: a top-level `platform` package would shadow the
standard-library module that numpy, torch and ray import.
"""
