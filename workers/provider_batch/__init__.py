"""The providers' Batch APIs for the API tier: OpenAI's Batch API and Anthropic's Message Batches.

A batch run submitted with a deadline of a day or more (``tierflow batch run --deadline 24h``,
or ``provider_batches.default``) lets its API-tier attempts wait for a provider batch instead of
calling the model at once, at the provider's batch price (half the synchronous one unless the
model's ``batch_*_cost_per_million`` say otherwise). The path of one request:

    DeferToProviderBatch  workers/pipeline/defer.py   the exact body stored as an item, the
                                                      attempt's lease held past the window
    submit_ready          submit.py                   items grouped per (provider, model, base
                                                      URL) into one provider batch each (beat)
    poll_open             poll.py                     status polled; once ended, every result
                                                      (or error) stored per ``custom_id`` (beat)
    resume_attempt        workers/tasks.py            the attempt resumed from the Gate onward
                                                      (workers/pipeline RESUME_STEPS)

One module per idea: :mod:`.requests` (the body sent), :mod:`.clients` (the SDK clients),
:mod:`.results` (what a provider's result line means: an answer, or an error with its kind),
:mod:`.submit`, :mod:`.poll`, :mod:`.dispatch` (the resume message).
"""
