"""`scripts/doctor`: a short battery of real requests, sent to a Kimi server directly and through
kimiwire, and a table of what each side got (`cases`: the requests and how an answer is read;
`__main__`: sending them, the report, the options to use)."""
