"""Sections of the run page that are not plain metric tables: scaling fits, backdoor succession
and transfer, forgetting."""
