/*
 * dns.h: build a DNS query for the A record of WEB_FQDN and print what the answer says.
 *
 * print_answer prints "received N", "id_match 1", "rcode R" and one "answer IP" per A record.
 */
#ifndef MT_DNS_H
#define MT_DNS_H

#include "common.h"

static MT_UNUSED int build_query(unsigned char *buf, unsigned short id)
{
	unsigned char *p = buf;
	*p++ = id >> 8;
	*p++ = id & 0xff;
	*p++ = 0x01; /* RD */
	*p++ = 0x00;
	*p++ = 0; *p++ = 1; /* QDCOUNT */
	memset(p, 0, 6);
	p += 6;
	const char *name = WEB_FQDN;
	while (*name) {
		const char *dot = strchr(name, '.');
		size_t len = dot ? (size_t)(dot - name) : strlen(name);
		*p++ = (unsigned char)len;
		memcpy(p, name, len);
		p += len;
		name += len + (dot ? 1 : 0);
	}
	*p++ = 0;
	*p++ = 0; *p++ = 1; /* QTYPE A */
	*p++ = 0; *p++ = 1; /* QCLASS IN */
	return (int)(p - buf);
}

static MT_UNUSED const unsigned char *skip_name(const unsigned char *p, const unsigned char *end)
{
	while (p < end) {
		if (*p == 0)
			return p + 1;
		if ((*p & 0xc0) == 0xc0)
			return p + 2;
		p += *p + 1;
	}
	return end;
}

static MT_UNUSED void print_answer(const unsigned char *buf, int len, unsigned short id)
{
	const unsigned char *end = buf + len;
	say("received %d\n", len);
	if (len < 12)
		return;
	say("id_match %d\nrcode %d\n", ((buf[0] << 8) | buf[1]) == id, buf[3] & 0x0f);
	int qd = (buf[4] << 8) | buf[5], an = (buf[6] << 8) | buf[7];
	const unsigned char *p = buf + 12;
	for (int i = 0; i < qd; i++)
		p = skip_name(p, end) + 4;
	for (int i = 0; i < an && p < end; i++) {
		p = skip_name(p, end);
		if (p + 10 > end)
			return;
		int type = (p[0] << 8) | p[1], rdlen = (p[8] << 8) | p[9];
		p += 10;
		if (type == 1 && rdlen == 4 && p + 4 <= end) {
			char ip[INET_ADDRSTRLEN];
			inet_ntop(AF_INET, p, ip, sizeof ip);
			say("answer %s\n", ip);
		}
		p += rdlen;
	}
}

#endif
