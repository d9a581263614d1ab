"""Old path of :mod:`loadtest.micro.bench_ledger`, kept so that recorded commands still run."""

from loadtest.micro.bench_ledger import main

if __name__ == "__main__":
    main()
