"""Backdoors: trigger insertion shared by the ``backdoor`` intervention and evaluator."""
