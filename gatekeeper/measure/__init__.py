"""Measuring a gate on labelled rows: metrics per intent, thresholds picked on ROC curves by a policy, and
the report with its images."""
