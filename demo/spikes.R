## vbayes main demo: one neuron's spike counts in 5 ms bins.
## Does the stimulus drive the neuron?  Fit two variational Poisson GLMs,
## read their posteriors and compare them by the evidence lower bound.
library(vbayes)
data(neuron, package = "vbayes")
truth <- attr(neuron, "truth")
cat(sprintf("%d bins of %g s, %d spikes (%.1f Hz)\n", nrow(neuron), truth$binwidth,
            sum(neuron$spikes), sum(neuron$spikes) / (nrow(neuron) * truth$binwidth)))

## Rate model: spikes ~ Poisson(binwidth * exp(b0 + b1 * stim))
base <- vb(spikes ~ 1, data = neuron, family = poisson(), exposure = 0.005)
stim <- vb(spikes ~ stim, data = neuron, family = poisson(), exposure = 0.005,
           prior = normal(0, 1), prior_intercept = normal(0, 10))
summary(base)
summary(stim)

## The two bounds side by side: ELBO = E[log-lik] - KL(q || prior)
tab <- rbind(baseline = elbo(base, terms = TRUE), stimulus = elbo(stim, terms = TRUE))
print(round(tab, 2))
cat(sprintf("ELBO difference (stimulus - baseline): %.1f nats in favour of the %s model\n",
            abs(diff(tab[, "elbo"])), if (diff(tab[, "elbo"]) > 0) "stimulus" else "baseline"))
cat(sprintf("Baseline rate %.1f Hz (95%% interval %.1f-%.1f), stimulus gain %.3f (truth %.1f; the\n  model omits refractoriness, so the estimates are those of the best stimulus-only model)\n",
            exp(coef(stim)[1]), exp(confint(stim)[1, 1]), exp(confint(stim)[1, 2]),
            coef(stim)[2], truth$stim_gain))

## A plot of the fitted rate against the binned data, written to a file
outdir <- Sys.getenv("VBAYES_DEMO_DIR", tempdir())
dir.create(outdir, showWarnings = FALSE, recursive = TRUE)
png_file <- file.path(outdir, "neuron-rate.png")
grDevices::png(png_file, width = 900, height = 600)
op <- par(mfrow = c(2, 1), mar = c(4, 4, 2, 1))
idx <- neuron$trial == 1 & neuron$time < 4
rate <- predict(stim, neuron[idx, ], type = "response", interval = "credible") / 0.005
smooth <- stats::filter(neuron$spikes[idx], rep(1 / 20, 20), sides = 2) / 0.005
plot(neuron$time[idx], smooth, type = "l", col = "grey50", xlab = "time (s)",
     ylab = "rate (Hz)", main = "Trial 1: smoothed counts (grey) and VB rate with 95% band")
polygon(c(neuron$time[idx], rev(neuron$time[idx])), c(rate[, "lwr"], rev(rate[, "upr"])),
        col = grDevices::adjustcolor("steelblue", 0.3), border = NA)
lines(neuron$time[idx], rate[, "fit"], col = "steelblue", lwd = 2)
plot(stim, which = "elbo")
par(op)
grDevices::dev.off()
cat("Plot written to", png_file, "\n")
