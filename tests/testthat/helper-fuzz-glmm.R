# Fuzz cases for hierarchical GLMs (R/glmm.R): bad and degenerate input to
# vb() with bar terms, the covariance priors and the vbglmm methods.
fuzz_topic_glmm <- list(
  setup = function(fx, fixture) {
    local(envir = fx, {
      set.seed(7)
      gd <- data.frame(g = factor(rep(1:6, each = 5)), h = factor(rep(1:5, 6)), x = rnorm(30))
      gd$y <- 1 + gd$x + rnorm(6)[gd$g] + rnorm(30, sd = 0.5)
      gd$cnt <- rpois(30, exp(0.3 + 0.4 * gd$x + rnorm(6, sd = 0.5)[gd$g]))
      gd$bin <- rbinom(30, 1, plogis(gd$x))
      gd$one <- factor("a")
      gd$const <- 2
      gq <- vb_control(quiet = TRUE)
    })
    fixture("gfit", vb(y ~ x + (1 + x | g), data = gd, control = gq))
  },
  cases = function() list(
    glmm = list(
      fz_err(huang_wand(nu = 0)), fz_err(huang_wand(nu = NA)), fz_err(huang_wand(scale = -1)),
      fz_err(huang_wand(scale = "a")), fz_err(huang_wand(nu = c(1, 2))), fz_err(huang_wand(scale = Inf)),
      fz_err(inv_wishart(df = -1)), fz_err(inv_wishart(scale = matrix(c(1, 2, 2, 1), 2))),
      fz_err(inv_wishart(scale = c(1, NA))), fz_err(inv_wishart(df = "3")),
      fz_ok(huang_wand(2, c(1, 2)), check = function(v, w) inherits(v, "vb_covariance_prior")),
      fz_err(vb(y ~ x + (1 | one), data = gd, control = gq)),
      fz_err(vb(y ~ x + (1 + const | g), data = gd, control = gq)),
      fz_err(vb(y ~ x + (1 | g), data = gd, approx = "nope", control = gq)),
      fz_ok(vb(y ~ x + (1 | g) + (1 | h), data = gd, approx = "partial", control = gq), check = fz_fit),
      fz_err(vb(y ~ x + (1 | g), data = gd, prior = laplace(0, 1), control = gq)),
      fz_err(vb(y ~ x + (1 | g), data = gd, prior_covariance = list(), control = gq)),
      fz_err(vb(y ~ x + (1 + x | g), data = gd, prior_covariance = huang_wand(scale = 1:3), control = gq)),
      fz_err(vb(y ~ x + (1 + x | g), data = gd, prior_covariance = inv_wishart(df = 0.5), control = gq)),
      fz_err(vb(y ~ x + (1 | g), data = gd, method = "sgvb", control = gq)),
      fz_err(vb(y ~ x + (1 | g), data = gd, family = binomial(), control = gq)),
      fz_err(vb(cnt ~ x + (1 | g), data = gd, family = gaussian(), exposure = 2, control = gq)),
      fz_ok(vb(y ~ x + (1 | g), data = gd, control = gq), check = fz_fit),
      fz_ok(vb(cnt ~ x + (1 | g), data = gd, family = poisson(), exposure = 0.5, control = gq), check = fz_fit),
      fz_ok(vb(bin ~ x + (1 | g), data = gd, family = binomial(), approx = "meanfield", control = gq), check = fz_fit),
      fz_ok(vb(cnt ~ x + (1 | g) + (1 | h), data = gd, family = poisson(), approx = "block", control = gq), check = fz_fit),
      fz_ok(vb(y ~ x + (x || g), data = gd, approx = "fullrank", control = gq), check = fz_fit),
      fz_ok(vb(y ~ x + (1 | g), data = gd, prior_covariance = inv_wishart(3, 1), control = gq), check = fz_fit),
      fz_either(vb(y ~ x + (1 | g), data = gd, control = vb_control(maxit = 1, quiet = TRUE)), check = fz_fit),
      fz_ok(fixef(gfit)), fz_ok(ranef(gfit)$g), fz_ok(VarCorr(gfit, ndraws = 50)[, 4:6]),
      fz_ok(coef(gfit)$g), fz_ok(predict(gfit, data.frame(x = 1, g = "zz"))),
      fz_err(predict(gfit, data.frame(x = 1, g = "zz"), allow.new.levels = FALSE)),
      fz_err(predict(gfit, re.form = "g")), fz_err(predict(gfit, re.form = ~ (1 | nope))),
      fz_err(VarCorr(gfit, level = 2)), fz_err(simulate(gfit, nsim = -1)),
      fz_ok(simulate(gfit, 2, seed = 1)), fz_ok(draws(gfit, 3)), fz_ok(summary(gfit)$coefficients),
      fz_ok(vcov(gfit, correction = "integrate", ndraws = 3), check = function(v, w) all(is.finite(v))),
      fz_err(vcov(gfit, correction = "integrate", ndraws = -1)), fz_err(vcov(gfit, correction = "nope"))
    )
  ),
  workload = alist(
    vb(y ~ x + (1 + x | g), data = gd, control = gq),
    vb(cnt ~ x + (1 | g) + (1 | h), data = gd, family = poisson(), approx = "block", control = gq),
    vb(cnt ~ x + (1 + x | g) + (1 | h), data = gd, family = poisson(), control = gq),
    vb(bin ~ x + (1 | g), data = gd, family = binomial(), approx = "fullrank", control = gq)
  )
)
