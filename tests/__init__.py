"""Tests of sb3_npg."""
