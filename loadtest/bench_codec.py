"""Old path of :mod:`loadtest.micro.bench_codec`, kept so that recorded commands still run."""

from loadtest.micro.bench_codec import main

if __name__ == "__main__":
    main()
