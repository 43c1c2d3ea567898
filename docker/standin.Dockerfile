# The Bot API stand-in for the demo: a static binary on scratch.
FROM scratch
COPY telegram-standin /telegram-standin
USER 10001:10001
EXPOSE 8081
ENTRYPOINT ["/telegram-standin"]
CMD ["serve", "--listen", "0.0.0.0:8081"]
