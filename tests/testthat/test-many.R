# vb_many(): the split into units, the per-unit fits, reproducibility on any
# plan, failures as data, and the units x models table bms() takes.  The
# reference for every unit is a direct vb() fit of that unit's rows.

many_data <- function(seed = 1) {
  set.seed(seed)
  d <- data.frame(unit = rep(c("n1", "n2", "n3"), each = 80), x = rnorm(240), w = runif(240, 0.5, 2))
  d$y <- rpois(240, exp(0.2 + c(0.5, 0, -0.4)[as.integer(factor(d$unit))] * d$x))
  d
}

test_that("each unit's fit is the direct vb() fit of its rows, column arguments included", {
  d <- many_data()
  m <- vb_many(y ~ x, d, by = "unit", family = poisson(), weights = w, exposure = 0.5)
  expect_s3_class(m, "vb_many")
  expect_identical(m$units$unit, c("n1", "n2", "n3"))
  for (u in m$units$unit) {
    ref <- vb(y ~ x, data = d[d$unit == u, ], family = poisson(), weights = w, exposure = 0.5)
    expect_equal(m$coefficients[u, ], coef(ref), tolerance = 1e-12)
    expect_equal(m$se[u, ], sqrt(diag(vcov(ref))), tolerance = 1e-12)
    expect_equal(m$units$elbo[m$units$unit == u], elbo(ref), tolerance = 1e-12)
    expect_equal(m$units$n[m$units$unit == u], 80L)
  }
  expect_true(all(m$units$converged))
  # the same units from a formula 'by', a vector 'by' and a list of data sets
  m2 <- vb_many(y ~ x, d, by = ~unit, family = poisson(), weights = w, exposure = 0.5)
  m3 <- vb_many(y ~ x, d, by = d$unit, family = poisson(), weights = w, exposure = 0.5)
  m4 <- vb_many(y ~ x, split(d, d$unit), family = poisson(), weights = w, exposure = 0.5)
  for (mm in list(m2, m3, m4)) expect_equal(mm$coefficients, m$coefficients, tolerance = 1e-12)
  # tidy: one row per unit and term, intervals from the posterior sds
  td <- tidy(m, conf.int = TRUE, conf.level = 0.9)
  expect_equal(nrow(td), 6L)
  i <- td$unit == "n2" & td$term == "x"
  expect_equal(td$conf.high[i], m$coefficients["n2", "x"] + qnorm(0.95) * m$se["n2", "x"])
  expect_equal(elbo(m), setNames(m$units$elbo, m$units$unit))
})

test_that("stochastic fits are reproducible bit for bit under sequential and multisession plans", {
  skip_if_not_installed("future")
  d <- many_data(2)
  run <- function() {
    set.seed(11)
    expect_warning(m <- vb_many(y ~ x, d, by = "unit", family = poisson(), method = "sgvb",
                                control = vb_control(quiet = TRUE, sgvb_maxit = 8), keep_fits = FALSE),
                   "units warned .*sgvb_maxit")
    m
  }
  old <- future::plan(future::sequential)
  on.exit(future::plan(old), add = TRUE)
  a <- run()
  future::plan(future::multisession, workers = 2)
  b <- run()
  future::plan(future::sequential)
  expect_identical(a$coefficients, b$coefficients)
  expect_identical(a$units$elbo, b$units$elbo)
  # the numbers depend on the streams (the test would pass trivially otherwise)
  set.seed(12)
  c2 <- suppressWarnings(vb_many(y ~ x, d, by = "unit", family = poisson(), method = "sgvb",
                                 control = vb_control(quiet = TRUE, sgvb_maxit = 300), keep_fits = FALSE))
  expect_false(identical(a$coefficients, c2$coefficients))
})

test_that("a failing unit is recorded with its error and the others are intact", {
  d <- many_data()
  d$y[d$unit == "n2"][3] <- -1 # a negative count: vb() refuses that unit
  expect_warning(m <- vb_many(y ~ x, d, by = "unit", family = poisson()), "1 of 3 fits failed \\(n2\\)")
  expect_match(m$units$error[2], "negative|non-negative")
  expect_true(all(is.na(m$units$error[-2])))
  expect_true(all(is.na(m$coefficients["n2", ])))
  expect_null(m$fits$n2)
  ref <- vb(y ~ x, data = d[d$unit == "n3", ], family = poisson())
  expect_equal(m$coefficients["n3", ], coef(ref), tolerance = 1e-12)
  expect_error(elbo_table(m, m), "distinct names")
  m0 <- suppressWarnings(vb_many(y ~ 1, d, by = "unit", family = poisson()))
  expect_error(elbo_table(null = m0, slope = m), "no finite ELBO.*n2")
  tab <- elbo_table(null = m0, slope = m, na = "drop")
  expect_identical(rownames(tab), c("n1", "n3"))
})

test_that("elbo_table() is the units x models matrix of the direct fits, and bms() takes it", {
  d <- many_data()
  m0 <- vb_many(y ~ 1, d, by = "unit", family = poisson())
  m1 <- vb_many(y ~ x, d, by = "unit", family = poisson())
  tab <- elbo_table(null = m0, slope = m1)
  ref <- t(vapply(c("n1", "n2", "n3"), function(u) {
    du <- d[d$unit == u, ]
    c(elbo(vb(y ~ 1, du, family = poisson())), elbo(vb(y ~ x, du, family = poisson())))
  }, numeric(2)))
  expect_equal(unname(tab), unname(ref), tolerance = 1e-12)
  expect_identical(dimnames(tab), list(c("n1", "n2", "n3"), c("null", "slope")))
  b <- bms(tab)
  expect_equal(sum(b$expected_frequency), 1)
  # fits of different responses are not comparable evidences
  d2 <- d
  d2$y <- d2$y + 1L
  m2 <- vb_many(y ~ x, d2, by = "unit", family = poisson())
  expect_error(elbo_table(m0, m2), "unit 'n1'.*different responses")
  expect_error(elbo_table(m0, vb_many(y ~ x, d[d$unit != "n3", ], by = "unit", family = poisson())),
               "different units \\(n3\\)")
  expect_error(elbo_table(m0), "at least two")
  expect_error(elbo_table(m0, 1), "not a vb_many")
})

test_that("vb_many() refuses input it cannot split, with a clear message", {
  d <- many_data()
  expect_error(vb_many(y ~ x, d), "give 'by'")
  expect_error(vb_many(y ~ x, d, by = "neuron"), "column 'neuron'")
  expect_error(vb_many(y ~ x, d, by = d$unit[-1]), "one value per row")
  expect_error(vb_many(y ~ x, d, by = replace(d$unit, 2, NA)), "missing values")
  expect_error(vb_many(y ~ x, d, by = ~ unit + x), "one-sided with one variable")
  expect_error(vb_many(y ~ x, list(d, 3)), "not data frames")
  expect_error(vb_many(y ~ x, list(a = d, a = d)), "distinct")
  expect_error(vb_many(y ~ x, list(d), by = "unit"), "'by' is for a data frame")
  expect_error(vb_many(y ~ x, d, by = "unit", fit = "vb"), "fitting function")
  expect_error(vb_many(y ~ x, d, by = "unit", keep_fits = NA), "keep_fits")
})

test_that("summary() and plot() of many fits show every unit", {
  d <- many_data()
  m <- vb_many(y ~ x, d, by = "unit", family = poisson())
  s <- summary(m)
  expect_equal(s$terms$mean[s$terms$term == "x"], mean(m$coefficients[, "x"]))
  out <- capture.output(print(s))
  expect_true(any(grepl("3 converged", out)))
  pdf(NULL)
  on.exit(dev.off())
  pd <- plot(m)
  expect_equal(pd$upper, pd$estimate + 1.96 * pd$se)
  expect_equal(nrow(plot(m, "elbo")), 3L)
  expect_error(plot(m, term = "z"), "one of")
})

test_that("objects a formula names reach the workers of a multisession plan", {
  skip_if_not_installed("future")
  d <- many_data(3)
  basis_for_test <- cbind(b1 = d$x * 0 + 1, b2 = seq_len(nrow(d)) / nrow(d))
  shift <- function(v) v + basis_for_test[seq_along(v), 2]
  ref <- vb_many(y ~ shift(x), d, by = "unit", family = poisson())
  old <- future::plan(future::multisession, workers = 2)
  on.exit(future::plan(old), add = TRUE)
  m <- vb_many(y ~ shift(x), d, by = "unit", family = poisson())
  expect_true(all(is.na(m$units$error)))
  expect_identical(m$coefficients, ref$coefficients)
})
