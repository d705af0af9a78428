# Fuzz cases of issue 12 (priors, prior_summary(), the glm generics,
# spike_history()); run by test-fuzz.R.  No new .Call routines: the workload
# adds the spike_history() convolution and a default-prior (centred) fit.
fuzz_topic_user <- list(
  setup = function(fx, fixture) {
    fixture("fit_auto", vb(y ~ x + x2, data = d, prior = normal(0, 1, autoscale = TRUE)))
    fixture("fit_hist2", vb(spikes ~ stim + spike_history(spikes, B, trial), data = nd,
                            family = poisson(), exposure = 0.005))
  },
  cases = function() list(
    user_priors = list(
      fz_err(normal(0, 1, autoscale = NA)), fz_err(normal(0, 1, autoscale = "yes")),
      fz_err(laplace(0, 1, autoscale = c(TRUE, FALSE))), fz_err(gamma_prior(1, 1, autoscale = 1)),
      fz_ok(normal(0, 2.5, autoscale = TRUE), check = function(v, w) if (isTRUE(v$autoscale)) TRUE else "autoscale lost"),
      fz_err(vb(y ~ x, data = d, prior = list(dist = "t", df = 3, location = 0, scale = 1, autoscale = FALSE))),
      fz_err(vb(y ~ x, data = d, prior = list(dist = "hs", location = 0, scale = 1))),
      fz_err(vb(y ~ x, data = d, prior = list(dist = "normal", location = "a", scale = 1))),
      fz_err(vb(y ~ x, data = d, prior = list(dist = "normal", location = 0, scale = -1))),
      fz_ok(vb(y ~ x, data = d, prior = list(dist = "normal", df = NA, location = 0, scale = NULL, autoscale = TRUE)),
            check = fz_fit),
      fz_err(vb(y ~ x, data = d, prior_precision = list(dist = "exponential", location = NA, scale = 1))),
      fz_err(vb(y ~ x, data = d, prior = structure(list(dist = "normal", location = 0, scale = 1, autoscale = NA), class = "vb_prior"))),
      fz_ok(vb(y ~ x, data = transform(d, y = 3)), check = fz_fit),
      fz_ok(vb(y ~ x, data = transform(d, x = x * 1e-100)), check = fz_fit),
      fz_either(vb(y ~ x, data = transform(d, x = x * 1e140)), check = fz_fit),
      fz_ok(vb(y ~ 0 + x, data = d), check = fz_fit),
      fz_ok(vb(cnt ~ x, data = d, family = poisson(), approx = "meanfield"), check = fz_fit),
      fz_ok(vb(y ~ x + x2, data = d, method = "sgvb", control = vb_control(quiet = TRUE, sgvb_maxit = 500)),
            check = fz_fit),
      fz_ok(prior_summary(fit_auto)), fz_ok(prior_summary(fit_b)), fz_err(prior_summary(1)),
      fz_ok(print(prior_summary(fit_g)), check = function(v, w) TRUE)),
    user_generics = list(
      fz_ok(residuals(fit_p, type = "pearson")), fz_ok(residuals(fit_b, type = "working")),
      fz_ok(residuals(fit_g, type = "deviance")), fz_err(residuals(fit_g, type = "bogus")),
      fz_ok(predict(fit_p, se.fit = TRUE)), fz_ok(predict(fit_b, type = "response", se.fit = TRUE)),
      fz_err(predict(fit_g, se.fit = "yes")), fz_err(predict(fit_g, se.fit = NA)),
      fz_ok(sigma(fit_g)), fz_ok(deviance(fit_b)), fz_ok(deviance(fit_p)), fz_ok(weights(fit_b, type = "working")),
      fz_err(weights(fit_g, type = "bogus")), fz_err(df.residual(fit_g)), fz_err(logLik(fit_g)),
      fz_err(AIC(fit_g)), fz_err(BIC(fit_p)), fz_ok(model.matrix(fit_xf)), fz_ok(nrow(model.frame(fit_g))),
      fz_ok(summary(fit_auto), check = function(v, w) if (length(v$priors) == 4L) TRUE else "priors missing")),
    user_spike_history = list(
      fz_err(spike_history(letters, diag(2))), fz_err(spike_history(c(1, NA, 0), diag(2))),
      fz_err(spike_history(c(0, 1, 0), matrix("a", 2, 2))), fz_err(spike_history(c(0, 1, 0), diag(2), first_lag = -1)),
      fz_err(spike_history(c(0, 1, 0), diag(2), trial = 1:2)), fz_err(spike_history(c(0, 1, 0), NULL)),
      fz_either(spike_history(numeric(0), diag(2)), check = function(v, w) if (NROW(v) == 0L) TRUE else "rows"),
      fz_ok(spike_history(c(0, 1, 0, 2, 0), diag(2), first_lag = 100)),
      fz_ok(bits_per_spike(fit_hist2, newdata = neuron[1501:1800, ])),
      fz_ok(predict(fit_hist2, neuron[1501:1600, ], se.fit = TRUE)),
      fz_ok(filters(fit_hist2)))),
  workload = alist(
    spike_history(nd$spikes[1:100], B, nd$trial[1:100]),
    vb(y ~ x + x2, data = d, approx = "meanfield", control = quiet))
)
