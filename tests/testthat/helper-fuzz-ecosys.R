# Fuzz cases of the ecosystem methods (R/ecosystem.R, R/tidiers.R, R/plot.R):
# log_lik, loo, as_draws, augment (the exported names), the registered
# methods of rstantools, posterior, bayesplot and emmeans, and the plots'
# argument checks.  No .Call routines of their own: loo() reaches the GLM log
# joint, recorded by the workload.
fuzz_topic_ecosys <- list(
  setup = function(fx, fixture) NULL,
  cases = function() {
    is_loo <- function(v, w) if (inherits(v, "psis_loo") && all(is.finite(v$estimates))) TRUE else "not a finite loo object"
    is_draws <- function(v, w) if (inherits(v, "draws") && all(is.finite(unclass(posterior::as_draws_matrix(v))))) TRUE else "not finite draws"
    gg <- function(v, w) if (inherits(v, "ggplot")) TRUE else "not a ggplot"
    dims <- function(r, c) function(v, w) if (identical(dim(v), c(r, c))) fz_finite(v) else sprintf("dim %s", paste(dim(v), collapse = " x "))
    em_ok <- function(v, w) fz_finite(v[setdiff(names(v), "df")]) # df = Inf: a Gaussian q
    out <- list(
      log_lik = list(
        fz_ok(log_lik(fit_g, draws = 20), check = dims(20L, 40L)),
        fz_ok(log_lik(fit_b, draws = 5), check = dims(5L, 40L)),
        fz_ok(log_lik(fit_p, newdata = d[1:3, ], draws = 5), check = dims(5L, 3L)),
        fz_err(log_lik(fit_g, draws = 0)), fz_err(log_lik(fit_g, draws = NA)),
        fz_err(log_lik(fit_g, draws = "a")), fz_err(log_lik(fit_g, draws = 1e12)),
        fz_err(log_lik(dens)), fz_err(log_lik(lds1)), fz_err(log_lik(fit_xf)),
        fz_err(log_lik(fit_g, newdata = data.frame(x = 1))), fz_err(log_lik(fit_g, newdata = 1))
      ),
      tidiers = list(
        fz_ok(tidy(fit_p, conf.int = TRUE, exponentiate = TRUE)[, -1]),
        fz_err(tidy(fit_g, conf.int = NA)), fz_err(tidy(fit_g, exponentiate = "yes")),
        fz_err(tidy(fit_g, conf.int = TRUE, conf.level = 2)), fz_err(glance(fit_g, looic = NA)),
        fz_ok(augment(fit_g)), fz_ok(augment(fit_b, type.predict = "response", se_fit = TRUE, interval = "credible")),
        fz_ok(augment(fit_p, newdata = d[1:4, ], se_fit = TRUE)),
        fz_err(augment(fit_g, data = d[1:5, ])), fz_err(augment(fit_g, newdata = 1)),
        fz_err(augment(fit_g, se_fit = NA)), fz_err(augment(fit_g, type.predict = "bogus")),
        fz_err(augment(fit_g, conf.level = -1)), fz_err(augment(dens)), fz_err(augment(fit_xf))
      ),
      plots = list(
        fz_err(plot(fit_g, "coef", pars = "zz")), fz_err(plot(fit_g, "coef", pars = 99)),
        fz_err(plot(fit_g, "coef", pars = list(1))), fz_err(plot(fit_g, "coef", level = 2)),
        fz_err(plot(lds1, "rates", units = 0)), fz_err(plot(lds1, "rates", units = NA)),
        fz_err(plot(lds1, level = 2)), fz_err(plot(lds1, trial = 5))
      )
    )
    if (requireNamespace("loo", quietly = TRUE))
      out$loo <- list(
        fz_ok(suppressWarnings(loo(fit_p, draws = 200)), check = is_loo),
        fz_ok(suppressWarnings(loo::loo(fit_b, draws = 200)), check = is_loo),
        fz_ok(suppressWarnings(loo::waic(fit_g, draws = 200)), check = function(v, w) inherits(v, "waic")),
        fz_ok(suppressWarnings(loo::loo_compare(fit_g, fit_g2, draws = 100)), check = function(v, w) fz_finite(unclass(v))),
        fz_err(loo(dens)), fz_err(loo(lds1)), fz_err(loo(fit_g, draws = -1)), fz_err(loo(fit_xf)),
        fz_err(loo::loo_compare(fit_g, 1)), fz_err(loo::loo_compare(fit_g, criterion = "loo"))
      )
    if (requireNamespace("posterior", quietly = TRUE))
      out$as_draws <- list(
        fz_ok(as_draws(fit_g, draws = 10), check = is_draws),
        fz_ok(posterior::as_draws_array(lds1, draws = 5), check = is_draws),
        fz_ok(posterior::as_draws_matrix(dens, draws = 5), check = is_draws),
        fz_ok(posterior::as_draws_list(fit_b, draws = 5), check = is_draws),
        fz_err(as_draws(fit_g, draws = 0)), fz_err(posterior::as_draws_df(fit_g, draws = NA))
      )
    if (requireNamespace("rstantools", quietly = TRUE))
      out$rstantools <- list(
        fz_ok(rstantools::posterior_predict(fit_b, draws = 5), check = dims(5L, 40L)),
        fz_ok(rstantools::posterior_epred(fit_p, newdata = d[1:3, ], draws = 5), check = dims(5L, 3L)),
        fz_ok(rstantools::posterior_linpred(fit_g, transform = TRUE, draws = 5), check = dims(5L, 40L)),
        fz_ok(rstantools::bayes_R2(fit_b, draws = 50)), fz_ok(rstantools::bayes_R2(fit_p, draws = 50)),
        fz_err(rstantools::posterior_predict(fit_g, draws = 0)),
        fz_err(rstantools::posterior_epred(fit_g, newdata = "x")),
        fz_err(rstantools::posterior_linpred(fit_g, transform = NA)),
        fz_err(rstantools::posterior_predict(fit_xf, draws = 3)), fz_err(rstantools::bayes_R2(fit_xf))
      )
    if (requireNamespace("bayesplot", quietly = TRUE))
      out$pp_check <- list(
        fz_ok(bayesplot::pp_check(fit_g, nreps = 5), check = gg),
        fz_ok(bayesplot::pp_check(fit_b, "bars", nreps = 5), check = gg),
        fz_err(bayesplot::pp_check(fit_g, "bogus")), fz_err(bayesplot::pp_check(fit_g, NA_character_)),
        fz_err(bayesplot::pp_check(fit_g, nreps = -1)), fz_err(bayesplot::pp_check(fit_g, "intervals", x = "nope"))
      )
    if (requireNamespace("emmeans", quietly = TRUE))
      out$emmeans <- list(
        fz_ok(as.data.frame(summary(emmeans::emmeans(fit_g, "x", at = list(x = c(-1, 1))))), check = em_ok),
        fz_ok(as.data.frame(summary(emmeans::emmeans(fit_b, "x", type = "response"))), check = em_ok)
      )
    out
  },
  workload = alist(suppressWarnings(loo(fit_p, draws = 100)))
)
