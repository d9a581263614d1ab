"""Old path of :mod:`loadtest.micro.bench_writes`, kept so that recorded commands still run."""

from loadtest.micro.bench_writes import main

if __name__ == "__main__":
    main()
