"""The read API: `abacus serve` (HTTP JSON), `abacus counts get` (the same queries from the
CLI), both reading the store the cutover's stage designates, with a live read-path
experiment against the candidate store (serve/README.md)."""
