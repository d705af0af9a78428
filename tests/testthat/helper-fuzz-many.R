fuzz_topic_many <- list(
  setup = function(fx, fixture) {
    fx$dm <- data.frame(u = rep(c("a", "b"), each = 20), x = rnorm(40))
    fx$dm$y <- rpois(40, exp(0.3 * fx$dm$x))
    fixture("many1", vb_many(y ~ x, dm, by = "u", family = poisson()))
    fixture("many0", vb_many(y ~ 1, dm, by = "u", family = poisson()))
  },
  cases = function() list(many = list(
    fz_err(vb_many(y ~ x, dm)), fz_err(vb_many(y ~ x, dm, by = "nope")), fz_err(vb_many(y ~ x, dm, by = 1:3)),
    fz_err(vb_many(y ~ x, dm, by = "u", fit = 1)), fz_err(vb_many(y ~ x, list(), family = poisson())),
    fz_err(vb_many(y ~ x, "data", by = "u")),
    fz_ok(vb_many(y ~ x, dm, by = "u", family = poisson(), approx = "meanfield"),
          check = function(v, w) if (all(v$units$converged)) TRUE else "not converged"),
    fz_err(elbo_table(many1)), fz_err(elbo_table(many1, many1)), fz_err(elbo_table(a = many1, b = "x")),
    fz_ok(elbo_table(a = many0, b = many1), check = function(v, w) fz_finite(v))
  )))
fuzz_topic_population <- list(
  setup = function(fx, fixture) {
    fx$Bp <- raised_cosine_basis(2, c(0.005, 0.02), 0.01, 0.005)
    fx$Yp <- matrix(rpois(600, 0.3), 200, 3)
  },
  cases = function() list(population = list(
    fz_err(vb_population(Yp[, 1], basis = Bp)), fz_err(vb_population(-Yp, basis = Bp)),
    fz_err(vb_population(Yp, basis = NULL)), fz_err(vb_population(Yp, basis = Bp, trial = 1:3)),
    fz_err(ard(-1)), fz_err(ard(1, NA)), fz_ok(ard(2, 3), check = function(v, w) inherits(v, "vb_ard")),
    fz_ok(vb_population(Yp, basis = Bp), check = function(v, w) fz_finite(v$gain))
  )),
  workload = alist(vb(cnt ~ x + x2, data = d, family = poisson(), prior = ard(), control = quiet)))
fuzz_topic_chunks <- list(
  setup = function(fx, fixture) {
    fx$chunk_src <- local({
      pieces <- split(fx$d, rep(1:2, each = 20))
      i <- 0
      function(reset) {
        if (reset) { i <<- 0; return(NULL) }
        i <<- i + 1
        if (i > 2) NULL else pieces[[i]]
      }
    })
  },
  cases = function() list(chunks = list(
    fz_err(vb_chunks(1)), fz_err(vb_chunks(NA_character_)), fz_err(vb_chunks("no-such-file.csv")),
    fz_err(vb(cnt ~ x, data = vb_chunks(function(reset) if (reset) NULL else "x"), family = poisson())),
    fz_err(vb(cnt ~ x, data = vb_chunks(chunk_src), family = poisson(), method = "sgvb")),
    fz_err(vb(cnt ~ x, data = vb_chunks(chunk_src), family = poisson())),
    fz_ok(vb(cnt ~ x, data = vb_chunks(chunk_src), family = poisson(), prior = normal(0, 1),
             prior_intercept = normal(0, 5), control = quiet), check = fz_fit),
    fz_ok(vb(y ~ x, data = vb_chunks(chunk_src), approx = "meanfield", prior = normal(0, 1),
             prior_intercept = normal(0, 5), prior_precision = gamma_prior(1, 1), control = quiet), check = fz_fit)
  )))
fuzz_topic_lds_block <- list(
  cases = function() list(lds_block = list(
    fz_err(vb_lds(Y, 1, approx = "block")), fz_err(vb_lds(Y, 1, approx = "block", blocks = -1)),
    fz_err(vb_lds(Y, 1, approx = "block", blocks = list(1:5))), fz_err(vb_lds(Y, 1, blocks = 3)),
    fz_ok(vb_lds(Y, 1, approx = "block", blocks = 7, control = vb_control(maxit = 5, quiet = TRUE)),
          check = function(v, w) fz_finite(v$elbo))
  )),
  workload = alist(
    vb_lds(Y[1:30, ], 1, approx = "block", blocks = 4, control = vb_control(maxit = 3, quiet = TRUE)),
    vb_lds(Ycnt[1:30, ], 1, family = poisson(), approx = "block", blocks = list(1:2, 3:30),
           control = vb_control(maxit = 3, quiet = TRUE))))
