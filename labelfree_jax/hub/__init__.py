"""Everything that talks to the Hugging Face Hub: download and verify, model cards, publish, the model zoo and sample data indexes, the Allen data download.

May import every layer below it (core to inference and evaluation).
"""
