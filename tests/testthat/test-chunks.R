# vb(data = vb_chunks(...)): the streamed fit against the in-memory fit of the
# same rows (the reference: same model, same ELBO, one pass per iteration).

# explicit priors: a streamed fit takes its priors as given (no autoscaling)
vbp <- function(...) {
  cl <- match.call() # a call of vb(), so column arguments (weights = w) keep their meaning
  cl[[1L]] <- quote(vb)
  cl$prior <- quote(normal(0, 2.5))
  cl$prior_intercept <- quote(normal(0, 10))
  cl$prior_precision <- quote(gamma_prior(1, 1))
  eval(cl, parent.frame())
}

chunk_data <- function(n = 2400, seed = 1) {
  set.seed(seed)
  d <- data.frame(x = rnorm(n), f = sample(c("a", "b", "c"), n, TRUE), w = runif(n, 0.5, 2),
                  stringsAsFactors = FALSE)
  d$cnt <- rpois(n, exp(1 + 0.3 * d$x + 0.4 * (d$f == "b")))
  d$yg <- 1 + d$x - 0.5 * (d$f == "c") + rnorm(n)
  d$yb <- rbinom(n, 1, plogis(0.8 * d$x))
  d$k <- rbinom(n, 5, plogis(0.3 * d$x))
  d
}
# uneven chunks; the first lacks level "c"; an empty chunk; NA in a later one
chunk_pieces <- function(d) {
  pieces <- list(d[1:300, ], d[301:1500, ], d[0, ], d[1501:2400, ])
  pieces[[1]] <- pieces[[1]][pieces[[1]]$f != "c", ]
  pieces[[4]]$x[c(3, 50)] <- NA
  pieces
}
chunk_fun <- function(pieces) {
  i <- 0
  function(reset) {
    if (reset) { i <<- 0; return(NULL) }
    i <<- i + 1
    if (i > length(pieces)) NULL else pieces[[i]]
  }
}
same_fit <- function(a, b, tol = 1e-8) {
  expect_equal(a$elbo, b$elbo, tolerance = tol / abs(b$elbo))
  expect_equal(coef(a), coef(b), tolerance = 1e-6)
  expect_equal(vcov(a), vcov(b), tolerance = 1e-4) # the ELBO is flat to second order in Sigma
  expect_true(a$converged)
}

test_that("streamed fits equal in-memory fits for every family and family of q", {
  d <- chunk_data()
  pieces <- chunk_pieces(d)
  dd <- do.call(rbind, pieces)
  ctl <- vb_control(tol = 1e-10)
  for (a in c("fullrank", "meanfield")) {
    same_fit(vbp(cnt ~ x + f, data = vb_chunks(chunk_fun(pieces)), family = poisson(), exposure = 0.5,
                approx = a, control = ctl),
             vbp(cnt ~ x + f, data = dd, family = poisson(), exposure = 0.5, approx = a, control = ctl))
    same_fit(vbp(yg ~ x + f, data = vb_chunks(chunk_fun(pieces)), weights = w, approx = a, control = ctl),
             vbp(yg ~ x + f, data = dd, weights = w, approx = a, control = ctl))
    same_fit(vbp(yb ~ x + f, data = vb_chunks(chunk_fun(pieces)), family = binomial(), approx = a, control = ctl),
             vbp(yb ~ x + f, data = dd, family = binomial(), approx = a, control = ctl))
  }
  same_fit(vbp(cbind(k, 5 - k) ~ x, data = vb_chunks(chunk_fun(pieces)), family = binomial(), control = ctl),
           vbp(cbind(k, 5 - k) ~ x, data = dd, family = binomial(), control = ctl))
  f <- vbp(cnt ~ x + f, data = vb_chunks(chunk_fun(pieces)), family = poisson(), exposure = 0.5)
  expect_equal(nobs(f), nrow(dd) - 2L)
  expect_equal(predict(f, newdata = d[1:5, ]),
               predict(vbp(cnt ~ x + f, data = dd, family = poisson(), exposure = 0.5), newdata = d[1:5, ]),
               tolerance = 1e-6)
  expect_error(fitted(f), "keeps no data")
  expect_error(residuals(f), "keeps no data")
})

test_that("a database query and a set of files stream the same fit", {
  skip_if_not_installed("RSQLite")
  d <- chunk_data(1500, 2)
  ref <- vbp(cnt ~ x + f, data = d, family = poisson(), control = vb_control(tol = 1e-10))
  con <- DBI::dbConnect(RSQLite::SQLite(), tempfile(fileext = ".sqlite"))
  on.exit(DBI::dbDisconnect(con), add = TRUE)
  DBI::dbWriteTable(con, "bins", d)
  f <- vbp(cnt ~ x + f, data = vb_chunks(con, "SELECT * FROM bins", chunk_size = 400), family = poisson(),
          control = vb_control(tol = 1e-10))
  same_fit(f, ref)
  files <- vapply(1:3, function(k) tempfile(fileext = ".csv"), "")
  idx <- split(seq_len(nrow(d)), rep(1:3, c(200, 700, 600)))
  for (k in 1:3) utils::write.csv(d[idx[[k]], ], files[k], row.names = FALSE)
  same_fit(vbp(cnt ~ x + f, data = vb_chunks(files), family = poisson(), control = vb_control(tol = 1e-10)), ref)
})

test_that("database chunks read in parallel by workers with their own connections give the same fit", {
  skip_if_not_installed("RSQLite")
  skip_if_not_installed("future")
  d <- chunk_data(1500, 5)
  ref <- vbp(cnt ~ x + f, data = d, family = poisson(), control = vb_control(tol = 1e-10))
  path <- tempfile(fileext = ".sqlite")
  con <- DBI::dbConnect(RSQLite::SQLite(), path)
  on.exit(DBI::dbDisconnect(con), add = TRUE)
  DBI::dbWriteTable(con, "bins", d)
  # as a user writes it at top level: the path is a global, which does not
  # travel to a worker by itself
  assign(".vbayes_chunk_test_path", path, envir = globalenv())
  on.exit(rm(".vbayes_chunk_test_path", envir = globalenv()), add = TRUE)
  connect <- function() DBI::dbConnect(RSQLite::SQLite(), .vbayes_chunk_test_path)
  environment(connect) <- globalenv()
  src <- vb_chunks(con, "SELECT * FROM bins ORDER BY rowid", chunk_size = 400, connect = connect)
  expect_output(print(src), "read in parallel")
  old <- future::plan(future::multisession, workers = 2)
  on.exit(future::plan(old), add = TRUE)
  f <- vbp(cnt ~ x + f, data = src, family = poisson(), control = vb_control(tol = 1e-10))
  same_fit(f, ref)
  expect_error(vb_chunks(con, "SELECT * FROM bins", connect = path), "'connect' must be NULL or a function")
})

test_that("bad sources get clear errors", {
  expect_error(vb_chunks(3), "function\\(reset\\), a DBI connection")
  expect_error(vb_chunks(c("no/such/file.csv")), "not found")
  skip_if_not_installed("RSQLite")
  con <- DBI::dbConnect(RSQLite::SQLite(), ":memory:")
  on.exit(DBI::dbDisconnect(con))
  expect_error(vb_chunks(con), "SQL 'query'")
  bad <- function(reset) if (reset) NULL else 1:3
  expect_error(vbp(y ~ x, data = vb_chunks(bad)), "not a data frame")
  none <- function(reset) NULL
  expect_error(vbp(y ~ x, data = vb_chunks(none)), "no rows")
  expect_error(vb(y ~ x, data = vb_chunks(none)), "give the priors explicitly \\(prior, prior_intercept, prior_precision\\)")
  d <- chunk_data(300)
  expect_error(vbp(cnt ~ x, data = vb_chunks(chunk_fun(list(d))), family = poisson(), method = "sgvb"),
               "coordinate ascent")
  neg <- d
  neg$cnt[4] <- -1
  expect_error(vbp(cnt ~ x, data = vb_chunks(chunk_fun(list(d, neg))), family = poisson()), "negative|non-negative")
})
